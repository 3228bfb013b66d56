from prefect_gitops.cli import main

main()
