"""`python -m deepdetect_operator`: the same CLI as the `deepdetect-operator` console script."""

from deepdetect_operator.cli import main

raise SystemExit(main())
