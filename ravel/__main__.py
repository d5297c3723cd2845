from ravel.cli.app import main

main()
