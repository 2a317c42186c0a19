from sft_cli.cli import main

main()
