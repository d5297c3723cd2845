"""`ravel ui`: a local web page per app — the live topology, start/stop, serial console and VNC.

- guard.py: who may talk to the server (a random token in the URL, then a cookie; the Host
  header; websockets from this page's origin only). Pure ASGI middleware.
- live.py: the app as the page shows it (the graph of ravel/graph with each VM's state and
  readiness), polled by one thread per watched app; start/stop run on a worker thread.
- relay.py: a websocket joined to a byte stream: the serial console (the same socket `ravel
  console` reaches, through the VM's host) and VNC (through the `ravel vnc` forward,
  ravel/access/vnc.py).
- server.py: the Starlette routes and pages; serve.py runs it with uvicorn on 127.0.0.1.
- static/: the page's own script and style; static/vendor/: xterm.js and noVNC with their
  licences, put there by tools/ui_assets.sh (`make setup`), never fetched at run time.

docs/ui.md is the user's side.
"""
