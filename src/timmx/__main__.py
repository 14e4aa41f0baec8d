from timmx.cli.app import main

main()
