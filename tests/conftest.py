import torch

# The models under test are tiny: intra-op threads only add overhead, and oversubscribe the
# 2-core CI machine when a test starts a subprocess.
torch.set_num_threads(1)
