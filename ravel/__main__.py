from ravel.cli.launch import main

main()
