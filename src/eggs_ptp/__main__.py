from eggs_ptp.cli import main

main()
