"""`python -m serve_app.cli`: the `zsc` command."""

from serve_app.cli.main import main

main()
