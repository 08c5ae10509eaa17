#include "backend/train_ops.h"

#include "core/error.h"

namespace swiftkv {

TrainingOps& training_ops(Backend& backend) {
    TrainingOps* ops = backend.training();
    SKV_CHECK(ops != nullptr, "the {} backend has no training ops (distillation runs on the cpu and cuda backends)",
              backend.name());
    return *ops;
}

}  // namespace swiftkv
