from muslin.lab.cli import main

main()
