//===- MemoryRules.h - derivatives of memory fills and copies ---*- C++ -*-===//
//
// memset and memcpy on differentiable memory are linear maps on the shadows
// of the bytes they write; this file states each once, as a tangent (forward
// sweep) and its transpose (reverse sweep):
//
//   fill  d[0..n) = v          tangent: sd = 0          transpose: sd = 0
//   copy  d[0..n) = s[0..n)    tangent: sd = ss         transpose: ss += sd,
//                                                                  sd = 0
//
// A copy whose source is not differentiable is a fill as far as the
// derivative goes. The activity analysis lets through only copies between
// arrays of one float type. memmove's operands may overlap: its tangent is a
// memmove of the shadows, and its transpose reads each sd[k] before the
// update of the ss[j] at the same address (see copyAdjointFn), which keeps
// ss += sd; sd = 0 exact for the bytes that are both source and target.
//
//===----------------------------------------------------------------------===//
#ifndef ENZPY_RULES_MEMORYRULES_H
#define ENZPY_RULES_MEMORYRULES_H

#include "llvm/IR/IRBuilder.h"

namespace enzpy {

/// The tangent of a fill or copy of \p Len bytes: \p DestShadow receives
/// \p SrcShadow's contents, or zeros when \p SrcShadow is null. A copy that
/// \p MayOverlap (memmove) moves the shadows the same way.
void emitMemoryTangent(llvm::IRBuilder<> &B, llvm::Value *DestShadow,
                       llvm::Value *SrcShadow, llvm::Value *Len,
                       bool MayOverlap);

/// The transpose: \p DestShadow's adjoint (of \p Elem values) is added to
/// \p SrcShadow when it is not null; \p DestShadow is zeroed. Right for
/// overlapping shadows too (memmove).
void emitMemoryTranspose(llvm::IRBuilder<> &B, llvm::Type *Elem,
                         llvm::Value *DestShadow, llvm::Value *SrcShadow,
                         llvm::Value *Len);

} // namespace enzpy

#endif
