"""annot: how much of disclaimer-labelled training data does a language model absorb anyway?

Pipeline stages, one module each: generate -> wrap -> train -> probe (-> analyze -> plot).
`annot run CONFIG` chains them for one run; every stage is also a plain function.
"""

__version__ = "0.1.0"
