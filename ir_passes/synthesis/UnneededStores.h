//===- UnneededStores.h - primal writes nobody reads ------------*- C++ -*-===//
//
// DuplicatedNoNeed(x, dx) says that the caller does not need x's contents
// after the call. When the derivative itself never reads x's memory again
// (no load, no call that is handed a pointer into it, its address neither
// stored nor turned into an integer), the primal's stores to x have no
// observer: they are erased, and whatever was computed only for them dies
// in the optimizer (O3's dead-code elimination). Tangent and adjoint code
// go through the shadow, which stays as it was.
//
// Decided per argument, on the finished derivative (before its loops are
// outlined onto threads), so that the reverse sweep's re-reads count as
// readers. Assumes that the caller checked that no two arrays share memory
// (Request::NoAlias); without that check another argument might read x's
// memory, and nothing is dropped.
//
//===----------------------------------------------------------------------===//
#ifndef ENZPY_SYNTHESIS_UNNEEDEDSTORES_H
#define ENZPY_SYNTHESIS_UNNEEDEDSTORES_H

#include "driver/DecisionLog.h"
#include "synthesis/Skeleton.h"
#include <string>
#include <vector>

namespace enzpy {

class UnneededStores {
public:
  explicit UnneededStores(DerivativeSkeleton &Sk) : Sk(Sk) {}
  /// Erases the primal's stores to each DuplicatedNoNeed array that the
  /// derivative does not read.
  void drop();
  /// One "no-need" line per DuplicatedNoNeed array: what was dropped, or
  /// why its stores were kept.
  void record(DecisionLog &Log) const;

private:
  struct Decision {
    const llvm::Value *Param;
    std::string Detail;
  };
  DerivativeSkeleton &Sk;
  std::vector<Decision> Decisions;
};

} // namespace enzpy

#endif
