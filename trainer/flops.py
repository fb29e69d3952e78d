"""`python -m trainer.flops ...`: the same CLI as `python -m core.flops` (core/flops_cli.py), under
the name issue 13 asked for. The FLOP module itself is core/flops.py; nothing is defined here."""

if __name__ == "__main__":
    from core.flops_cli import main

    main()
