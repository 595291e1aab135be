import sys

from etwtrace._cli import main

sys.exit(main())
