from videoq.cli import main

main()
