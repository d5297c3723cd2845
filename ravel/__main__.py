import sys

if sys.argv[1:2] == ["proxy"]:
    # started by ssh for every connection: no CLI imports (see ravel/access/proxy.py)
    from ravel.access.proxy import main as proxy

    sys.exit(proxy(sys.argv[2:]))

from ravel.cli.app import main  # noqa: E402

main()
