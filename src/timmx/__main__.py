from timmx.cli.app import run

run()
