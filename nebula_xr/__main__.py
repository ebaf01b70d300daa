from nebula_xr.daemon import main

main()
