"""Reaching into the guests: `ravel ssh`, `exec`, `cp`, `vnc`, `proxy`, `ssh-config`, `inventory`.

Guest networks exist only inside the hosts, so every way in goes through the VM's host: a TCP
connection made from the host (`Transport.connect`: a socket made inside a namespace host, a
direct-tcpip channel of an SSH host's pinned connection) or a unix socket of the VM on its host
(the guest agent's channel, the VNC console). The guest's SSH host key is the one ravel made for
it (cloud-init seed) and is pinned: nothing is trusted on first use.

guest.py    which host, address, user, keys and sockets a VM has (from the state)
channel.py  a connection to a guest port or a VM socket, through the host
relay.py    bytes between two ends until both are done (stdio, sockets, streams)
proxy.py    `ravel proxy APP VM PORT`: OpenSSH's ProxyCommand (light start-up: no CLI imports)
openssh.py  the OpenSSH options, config blocks and pinned known_hosts for the guests
agent.py    a QEMU guest agent client: run a command, read and write files
copy.py     `ravel cp`: files and trees over SFTP or the agent, verified, never left half-written
vnc.py      `ravel vnc`: a VM's VNC console on a port of 127.0.0.1 here
inventory.py  an Ansible inventory of an app
"""
