"""How bytes reach other hosts: ssh connections (paramiko), as OpenSSH's configuration
describes them. Used by the nodes; knows nothing of keys or clusters."""
