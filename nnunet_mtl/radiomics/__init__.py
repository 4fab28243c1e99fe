"""TI-RADS-aligned radiomics targets for clinical guidance (thyroid paper, Sec. 2.2)."""
