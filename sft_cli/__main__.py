from sft_cli.cli.app import main

main()
