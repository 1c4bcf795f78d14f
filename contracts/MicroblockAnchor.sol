// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

/// @title MicroblockAnchor
/// @notice Public, append-only record of the Merkle roots of AEAMC microblock hashes.
/// Anyone can call `verifyAnchor` to learn whether a root was anchored and in which block;
/// only submitters chosen by the owner can add roots, and the owner can pause anchoring.
/// @dev Layout is chosen for the cost of `anchor`, the only call made routinely:
/// `owner` and `paused` share slot 0 so one cold SLOAD answers the pause check, the submitter
/// check is one SLOAD, and each root costs exactly one new storage slot.
contract MicroblockAnchor {
    /// @notice Account allowed to manage submitters, pause, and hand over ownership.
    address public owner;
    /// @notice While true, `anchor` reverts; reads (`verifyAnchor`) keep working.
    bool public paused;

    /// @notice Account named by `transferOwnership` that may take over with `acceptOwnership`;
    /// address(0) when no transfer is under way.
    /// @dev Its own slot (slot 1), after the packed slot 0: only the rare ownership calls
    /// touch it, so `anchor` still reads `owner` and `paused` with one cold SLOAD.
    address public pendingOwner;

    /// @notice Accounts allowed to call `anchor`.
    mapping(address account => bool allowed) public isSubmitter;

    /// @dev root => (uint64 timestamp << 64) | uint64 blockNumber of the anchoring block.
    /// A mined transaction always has blockNumber >= 1, so a non-zero word means "anchored".
    mapping(bytes32 root => uint256 packed) private _anchors;

    /// @notice One event per anchored root, so indexers and auditors need no storage reads.
    event Anchored(bytes32 indexed root, address indexed submitter, uint256 timestamp, uint256 blockNumber);
    event OwnershipTransferred(address indexed previousOwner, address indexed newOwner);
    /// @notice A transfer to `newOwner` awaits its `acceptOwnership`; `newOwner` is address(0)
    /// when the owner cancelled a pending transfer.
    event OwnershipTransferStarted(address indexed previousOwner, address indexed newOwner);
    event SubmitterAdded(address indexed account);
    event SubmitterRemoved(address indexed account);
    event PauseChanged(bool paused, address indexed by);

    error NotOwner();
    error NotPendingOwner();
    error NotSubmitter();
    error Paused();
    error AlreadyAnchored(bytes32 root);
    error ZeroRoot();
    error ZeroAddress();

    modifier onlyOwner() {
        if (msg.sender != owner) revert NotOwner();
        _;
    }

    /// @notice The deployer becomes owner and first submitter, so a coordinator that deploys
    /// its own contract can anchor at once.
    constructor() {
        owner = msg.sender;
        isSubmitter[msg.sender] = true;
        emit OwnershipTransferred(address(0), msg.sender);
        emit SubmitterAdded(msg.sender);
    }

    /// @notice Records `root` with the current block's timestamp and number.
    /// @dev Reverts rather than overwriting: a root anchored twice would move its recorded
    /// block, which would break every proof bundle already issued for it.
    function anchor(bytes32 root) external {
        if (!isSubmitter[msg.sender]) revert NotSubmitter();
        if (paused) revert Paused();
        if (root == bytes32(0)) revert ZeroRoot();
        // slither-disable-next-line timestamp: tests whether the packed word is set, compares no time
        if (_anchors[root] != 0) revert AlreadyAnchored(root);
        _anchors[root] = (uint256(uint64(block.timestamp)) << 64) | uint256(uint64(block.number));
        emit Anchored(root, msg.sender, block.timestamp, block.number);
    }

    /// @notice Whether `root` was anchored and, if so, the timestamp and number of its block.
    /// @return anchored False (with zero timestamp and block number) for unknown roots.
    function verifyAnchor(bytes32 root)
        external
        view
        returns (bool anchored, uint256 timestamp, uint256 blockNumber)
    {
        uint256 packed = _anchors[root];
        // slither-disable-next-line timestamp: unpacks the stored word for the caller, decides nothing
        return (packed != 0, packed >> 64, uint256(uint64(packed)));
    }

    function addSubmitter(address account) external onlyOwner {
        if (account == address(0)) revert ZeroAddress();
        isSubmitter[account] = true;
        emit SubmitterAdded(account);
    }

    function removeSubmitter(address account) external onlyOwner {
        isSubmitter[account] = false;
        emit SubmitterRemoved(account);
    }

    /// @notice Stops new anchors, e.g. while a submitter key is suspected compromised.
    function pause() external onlyOwner {
        paused = true;
        emit PauseChanged(true, msg.sender);
    }

    function unpause() external onlyOwner {
        paused = false;
        emit PauseChanged(false, msg.sender);
    }

    /// @notice First step of a hand-over: names `newOwner`, who becomes owner only by calling
    /// `acceptOwnership`, so a mistyped address can never take (or strand) the contract.
    /// The owner keeps every right until then and can replace the pending account by calling
    /// again, or cancel the transfer with `newOwner` = address(0).
    function transferOwnership(address newOwner) external onlyOwner {
        // slither-disable-next-line missing-zero-check: address(0) is how a pending transfer is cancelled
        pendingOwner = newOwner;
        emit OwnershipTransferStarted(owner, newOwner);
    }

    /// @notice Second step: the pending owner takes over and the pending slot is cleared.
    function acceptOwnership() external {
        if (msg.sender != pendingOwner) revert NotPendingOwner();
        emit OwnershipTransferred(owner, msg.sender);
        owner = msg.sender;
        delete pendingOwner;
    }
}
