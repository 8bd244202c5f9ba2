from tunery.cli.main import cli

cli()
