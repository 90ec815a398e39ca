from flows.cli import console

console()
