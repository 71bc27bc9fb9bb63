# Copyright: virtops.kvm contributors
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Serve one directory over HTTP on 127.0.0.1, for the image URL + checksum path of the tests.

    python serve.py start DIR PIDFILE    start in the background, print the URL base (http://127.0.0.1:PORT/)
    python serve.py stop PIDFILE         stop the server that start wrote PIDFILE for

The port is chosen by the kernel (bind to port 0), so parallel test runs never collide. Only
127.0.0.1 is bound. The server logs each request to PIDFILE.log, so a test can tell whether an
image was downloaded again.
"""

from __future__ import annotations

import functools
import http.server
import os
import signal
import sys
import time


def _serve(directory, pidfile, ready_fd):
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=directory)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    with open(pidfile + ".log", "a", buffering=1, encoding="utf-8") as log:
        handler.func.log_message = lambda self, fmt, *args: log.write("%s\n" % (fmt % args))
        os.write(ready_fd, ("%d\n" % server.server_address[1]).encode())
        os.close(ready_fd)
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        server.serve_forever()


def start(directory, pidfile):
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        os.setsid()
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        try:
            _serve(directory, pidfile, write_fd)
        finally:
            os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd) as ready:
        port = ready.readline().strip()
    if not port:
        sys.exit("serve.py: the server did not start")
    with open(pidfile, "w", encoding="utf-8") as handle:
        handle.write("%d\n" % pid)
    print("http://127.0.0.1:%s/" % port)


def stop(pidfile):
    try:
        with open(pidfile, encoding="utf-8") as handle:
            pid = int(handle.read().strip())
    except FileNotFoundError:
        return
    try:
        os.kill(pid, signal.SIGTERM)
        for _attempt in range(50):
            os.kill(pid, 0)
            time.sleep(0.1)
    except ProcessLookupError:
        pass
    os.unlink(pidfile)


def main(argv):
    if len(argv) == 4 and argv[1] == "start":
        start(argv[2], argv[3])
    elif len(argv) == 3 and argv[1] == "stop":
        stop(argv[2])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
