//===- Adjoints.h - adjoint accumulators of the reverse sweep ---*- C++ -*-===//
//
// The reverse sweep keeps the adjoint of every active SSA value in a stack
// slot per lane, created zeroed in the entry block on first use: reverse
// rules add to it (add), and the reverse of the value's definition reads and
// clears it (take), so that a definition inside a loop starts each reversed
// iteration from zero. SROA and mem2reg turn the slots back into SSA values.
// Adjoints of memory live in the shadows, not here.
//
//===----------------------------------------------------------------------===//
#ifndef ENZPY_SYNTHESIS_ADJOINTS_H
#define ENZPY_SYNTHESIS_ADJOINTS_H

#include "synthesis/Skeleton.h"
#include "llvm/ADT/DenseMap.h"
#include "llvm/IR/IRBuilder.h"

namespace enzpy {

class AdjointStore {
public:
  explicit AdjointStore(const DerivativeSkeleton &Sk) : Sk(Sk) {}

  /// The slot of \p PV's adjoint in lane \p K.
  llvm::AllocaInst *slot(const llvm::Value *PV, unsigned K);
  /// adjoint(PV, K) += Delta; nothing when \p Delta is null or \p PV is
  /// not active.
  void add(llvm::IRBuilder<> &B, const llvm::Value *PV, unsigned K,
           llvm::Value *Delta);
  /// Reads and clears adjoint(PV, K).
  llvm::Value *take(llvm::IRBuilder<> &B, const llvm::Value *PV, unsigned K);
  /// take() in every lane.
  Lanes takeAll(llvm::IRBuilder<> &B, const llvm::Value *PV);

  /// The value whose adjoint \p Slot holds (in some lane), or null.
  const llvm::Value *valueOf(const llvm::AllocaInst *Slot) const;

  /// Sum + Delta for adjoints: the sign of a zero adjoint carries no
  /// information, so "0 + x" may fold to x (no-signed-zeros).
  static llvm::Value *sum(llvm::IRBuilder<> &B, llvm::Value *Sum,
                          llvm::Value *Delta);

private:
  const DerivativeSkeleton &Sk;
  llvm::DenseMap<std::pair<const llvm::Value *, unsigned>, llvm::AllocaInst *>
      Slots;
};

} // namespace enzpy

#endif
