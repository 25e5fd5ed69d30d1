"""The neutral core that the reference and the fast paths both import.

- ``validate``: argument checks, one function per argument kind, one error contract;
- ``operator``: the ``Operator`` protocol (forward, adjoint, normal, data_grad, norm);
- ``radon_geometry``: Radon conventions, rays, FBP filter, fan rebinning, the FBP pipeline;
- ``conebeam_geometry``: cone-beam conventions, rays, 3-D Joseph steps, FDK;
- ``nufft_kernel``: NUFFT conventions, the ES kernel, its parameters, grid sizes;
- ``solver``: ``SolverInfo`` and the contracts of every equilibrium solver;
- ``binding``: how ``luser_fast.reference`` binds the package's classes to the reference.

It imports nothing else from the package but ``luser_fast.constants`` (the values the
C++ headers define, ``csrc/common/constants.h``).
"""
