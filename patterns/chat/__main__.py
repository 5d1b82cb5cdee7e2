from patterns.chat.server import main

main()
