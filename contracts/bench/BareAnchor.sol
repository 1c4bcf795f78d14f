// SPDX-License-Identifier: Apache-2.0
pragma solidity 0.8.37;

/// @title BareAnchor
/// @notice Gas baseline, not for deployment: the least an anchor can cost (one new storage
/// slot and one event) with no access control, pause or duplicate check. MicroblockAnchor's
/// `anchor` is measured against it.
contract BareAnchor {
    mapping(bytes32 root => uint256 packed) private _anchors;

    event Anchored(bytes32 indexed root, address indexed submitter, uint256 timestamp, uint256 blockNumber);

    function anchor(bytes32 root) external {
        _anchors[root] = (uint256(uint64(block.timestamp)) << 64) | uint256(uint64(block.number));
        emit Anchored(root, msg.sender, block.timestamp, block.number);
    }
}
