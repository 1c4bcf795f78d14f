// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

/// @title SeedMicroblockRegistry
/// @notice Gas comparison point, not for deployment: the first design, which stored every
/// microblock's header fields on chain (four slots per microblock) instead of one Merkle root
/// per anchoring interval.
contract SeedMicroblockRegistry {
    struct Microblock {
        bytes32 blockHash;
        bytes32 previousHash;
        uint256 timestamp;
        address submitter;
        uint96 receiptCount;
    }

    address public owner;
    mapping(address account => bool allowed) public isSubmitter;
    mapping(bytes32 blockHash => Microblock block_) public microblocks;

    event MicroblockAnchored(
        bytes32 indexed blockHash, bytes32 indexed previousHash, address indexed submitter, uint256 receiptCount
    );

    error NotSubmitter();
    error AlreadyAnchored(bytes32 blockHash);

    constructor() {
        owner = msg.sender;
        isSubmitter[msg.sender] = true;
    }

    function anchor(bytes32 blockHash, bytes32 previousHash, uint96 receiptCount) external {
        if (!isSubmitter[msg.sender]) revert NotSubmitter();
        if (microblocks[blockHash].timestamp != 0) revert AlreadyAnchored(blockHash);
        microblocks[blockHash] = Microblock({
            blockHash: blockHash,
            previousHash: previousHash,
            timestamp: block.timestamp,
            submitter: msg.sender,
            receiptCount: receiptCount
        });
        emit MicroblockAnchored(blockHash, previousHash, msg.sender, receiptCount);
    }
}
