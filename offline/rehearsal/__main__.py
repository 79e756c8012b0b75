import sys

from offline.rehearsal.run import main

sys.exit(main(sys.argv[1:]))
