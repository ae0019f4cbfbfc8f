import sys

from rpp_learner.cli import main

sys.exit(main())
