"""Reproductions of the paper's experiments (Sanyal et al., ICLR 2021), each writing PNG figures and CSV numbers.

=========================  ==============================================================  ========================
experiment                 what                                                            module
=========================  ==============================================================  ========================
``toy-mnist``              Figure 2a: two images + Gaussian noise, label noise η,          :mod:`.toy_mnist`
                           adversarial / test / train error of an interpolating FC net
``label-noise-robustness`` Figure 2b: adversarial error against η for several ε on a       :mod:`.label_noise`
                           real dataset
=========================  ==============================================================  ========================
"""

EXPERIMENTS = ("toy-mnist", "label-noise-robustness")
