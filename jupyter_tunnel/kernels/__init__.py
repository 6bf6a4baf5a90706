"""Remote kernels: beast's kernels in the user's own Jupyter, through a tunnel.

``nanny`` runs on the target next to each kernel; ``remote`` sends it requests;
``specs`` writes the local kernelspecs that select ``provisioner``.
"""
