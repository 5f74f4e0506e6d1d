from gendeploy.cli import main

main()
