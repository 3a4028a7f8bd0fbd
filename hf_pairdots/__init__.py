"""hf_pairdots: Pair the Dots (Meng et al., 2020) for Hugging Face text classifiers.

Saliency of test words (Sec. 3.1), influence of training examples and of their words on that
saliency (Sec. 3.2, Eq. 4-8), and training-set edits that attack or fix a model (Sec. 4.2-4.3).

Sign convention, everywhere: I(z, m) = d m(θ_{z,ε})/dε at ε=0 = -∇θ m(θ)ᵀ H⁻¹ ∇θ L(z; θ);
positive means up-weighting z raises the measurement m.
"""

__version__ = "0.1.0"
