import sys

from reference_services.deploy.run import main

sys.exit(main())
