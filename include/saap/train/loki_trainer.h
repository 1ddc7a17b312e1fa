// Training Loki's artifact: one PCA per layer and KV head over every calibration key.
#pragma once
#include "saap/methods/loki.h"
#include "saap/train/calibration.h"

namespace saap {

// pre_rope: fit on the captured pre-RoPE keys; otherwise on post-RoPE keys (the model's RoPE
// applied at each key's position in its window). The artifact records which, plus the mean
// explained variance of the leading 12.5/25/50% of the dimensions under "train"
// ("mean_explained_variance": {"d_f=0.125": .., "d_f=0.25": .., "d_f=0.5": ..}).
// Throws InvalidArgument when the set is empty or inconsistent.
LokiArtifact train_loki(const CalibrationSet& set, bool pre_rope, bool progress = true);

}  // namespace saap
