from snapfaas.cli import main

main()
