//===- Tape.h - the stack of values the reverse sweep needs -----*- C++ -*-===//
//
// The tape is a growable stack of 8-byte slots owned by one derivative call.
// Every forward block that the reverse sweep will revisit pushes one frame at
// its end: the values its reverse needs (operands of derivative rules,
// shadow addresses, the index of the predecessor it was entered from). The
// reverse of that block pops the frame at its start. Because pushes happen
// once per block execution and pops mirror them, the stack handles loops of
// any trip count and any control flow without knowing trip counts.
//
// State lives in three allocas (base, top, capacity) that SROA promotes; the
// capacity check is one compare per block execution, growth doubles with
// realloc, and a failed realloc returns numba::NoMemoryStatus from the
// derivative. The tape never grows beyond the budget the loader defines
// (the global enzpy_tape_budget: {budget, refused request}, in bytes): a
// growth past it records the bytes it asked for and returns
// numba::TapeBudgetStatus, before any memory is touched (counted loops
// reserve their whole need before they start). A
// finished call leaves its block (up to SpareLimit) in a module global for
// the next call, which starts with that capacity: a tape of many MB taken
// fresh from malloc every call cost a page fault per 4 KB, half the time of
// a memory-bound gradient.
//
//===----------------------------------------------------------------------===//
#ifndef ENZPY_TAPE_H
#define ENZPY_TAPE_H

#include "llvm/ADT/ArrayRef.h"
#include "llvm/ADT/SmallPtrSet.h"
#include "llvm/IR/IRBuilder.h"

namespace enzpy {

class Tape {
public:
  /// Creates the tape state in \p Entry (before its terminator, if any).
  Tape(llvm::Function &D, llvm::BasicBlock &Entry);

  /// A frame being popped at the start of a reverse block: slots are read as
  /// they are asked for; the frame size is fixed by finish().
  class Frame {
  public:
    Frame(Tape &T, llvm::BasicBlock *Head);
    /// The value that \p Forward had when the frame was pushed.
    llvm::Value *pop(llvm::Value *Forward);
    llvm::ArrayRef<llvm::Value *> pushed() const { return Pushed; }
    /// Emit the push of this frame before \p ForwardEnd's terminator. With
    /// \p Checked false the capacity was reserved earlier (reserve()).
    void emitPush(llvm::BasicBlock *ForwardEnd, bool Checked = true);
    unsigned size() const { return Pushed.size(); }

  private:
    Tape &T;
    llvm::BasicBlock *Head;
    llvm::Value *Base = nullptr;
    llvm::BinaryOperator *NewTop = nullptr;
    llvm::SmallVector<llvm::Value *, 8> Pushed;
    llvm::DenseMap<llvm::Value *, llvm::Value *> Popped;
  };

  /// The slot holding the top of the stack (in slots).
  llvm::AllocaInst *topSlot() const { return Top; }
  /// Free the tape's memory (before \p Before).
  void emitFree(llvm::Instruction *Before);
  /// Make room for \p Slots more slots (before \p Before, which must be a
  /// terminator): one check before a counted loop instead of one per
  /// iteration.
  void emitReserve(llvm::Instruction *Before, llvm::Value *Slots);
  /// A block that frees the tape and fails the derivative (NoMemoryStatus,
  /// or TapeBudgetStatus after a refused growth): where a failed allocation
  /// of the derivative's own goes.
  llvm::BasicBlock *failureBlock();
  /// The largest value a slot holds, in bytes.
  static constexpr unsigned SlotBytes = 8;
  /// The tape's memory starts HeaderBytes into its block; the header holds
  /// the capacity (in slots) while the block waits for the next call in the
  /// module's spare slot (emitFree).
  static constexpr unsigned HeaderBytes = 64;
  /// Blocks larger than this are freed rather than kept for the next call.
  static constexpr uint64_t SpareLimit = uint64_t(1) << 30;

  /// Tell alias analysis what the derivative's construction knows: no
  /// access other than a slot's touches the tape's memory, which only the
  /// derivative allocates and never hands out. Slot accesses carry the
  /// tape's alias scope; every other load, store and memory intrinsic of
  /// the function, as it is when this runs, gets !noalias of it. Without
  /// this the loop vectorizer checks each loop's tape reads and writes
  /// against every array at run time.
  void separate();

private:
  /// Split \p Term's block before \p Term and grow the tape there when
  /// top + Extra exceeds the capacity. Returns the old top.
  llvm::Value *emitEnsure(llvm::Instruction *Term, llvm::Value *Extra);
  /// The module's spare block: the tape memory the last finished call left
  /// for the next (null when none), taken and given back atomically, so
  /// calls in several threads each get a block of their own.
  llvm::GlobalVariable *spare();
  /// The block of the tape memory at \p BaseV (null for null).
  static llvm::Value *raw(llvm::IRBuilder<> &B, llvm::Value *BaseV);

  llvm::Function &D;
  llvm::Type *I64;
  llvm::Type *Ptr;
  llvm::AllocaInst *Base;
  llvm::AllocaInst *Top;
  /// The status failureBlock returns.
  llvm::AllocaInst *FailStatus;
  /// The budget in slots (read once, in the entry block).
  llvm::Value *Room;
  /// The block every refused growth goes to, and the need it was refused.
  llvm::BasicBlock *Refuse = nullptr;
  llvm::PHINode *RefusedNeed = nullptr;
  /// The loader's budget words (enzpy_tape_budget).
  llvm::Value *budget();
  /// The shared refusal block, given the \p Need refused in \p From.
  llvm::BasicBlock *refusal(llvm::Value *Need, llvm::BasicBlock *From);
  llvm::AllocaInst *Cap;
  llvm::BasicBlock *Oom = nullptr;
  /// The scope of slot accesses (created with the first of them), and the
  /// slot accesses: separate() leaves them out.
  llvm::MDNode *Scope = nullptr;
  llvm::SmallPtrSet<const llvm::Instruction *, 32> Slots;
  void slotAccess(llvm::Instruction &I);
};

} // namespace enzpy

#endif
