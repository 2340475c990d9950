from trustedml.cli import main

main()
