"""python -m sandbox_host"""

from sandbox_host.server import main

main()
