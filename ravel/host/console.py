"""Relay this process's stdin/stdout to a VM's serial console socket on this host.

`ravel console` on a host it cannot reach directly runs this through SSH; the user's terminal
stays in raw mode on their side, so bytes pass through unchanged both ways.
"""

import os
import select
import socket
import sys


def relay(socket_path: str) -> int:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(socket_path)
    except OSError as exc:
        sys.stderr.write(f"ravel.host console: cannot connect to {socket_path}: {exc.strerror}\n")
        return 1
    stdin, stdout = sys.stdin.fileno(), sys.stdout.fileno()
    try:
        while True:
            ready, _, _ = select.select([s, stdin], [], [], 1.0)
            if s in ready:
                data = s.recv(65536)
                if not data:
                    return 0
                os.write(stdout, data)
            if stdin in ready:
                data = os.read(stdin, 65536)
                if not data:  # the other side detached
                    return 0
                s.sendall(data)
    finally:
        s.close()
