from luthitune.cli import main

main()
