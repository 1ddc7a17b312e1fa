#include "saap/methods/dense.h"

namespace saap {

void DenseAttention::select(const LayerKV&, const QueryView&, Selection& sel) { sel.all = true; }

}  // namespace saap
