from diffhpo.cli import main

main()
