"""Analysis tools: low-bit curves, Fourier spectra, objective inspection, the KL path (K&G App. I, J, Thm 1)."""

from ._fourier import power_spectra as power_spectra, PowerSpectra as PowerSpectra, radial_power as radial_power
from ._inspect import (
    ALL_PARAMETERISATIONS as ALL_PARAMETERISATIONS,
    inspect_objective as inspect_objective,
    mse_ratio as mse_ratio,
    ObjectiveReport as ObjectiveReport,
)
from ._kl_path import kl_path as kl_path, KLPath as KLPath, theorem1_rhs as theorem1_rhs
from ._low_bit import low_bit_curves as low_bit_curves, LowBitCurves as LowBitCurves
