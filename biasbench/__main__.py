from biasbench.cli import main

main()
