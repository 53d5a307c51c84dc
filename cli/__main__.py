from fracscan.cli.app import main

main()
